# A partial index of the MD-drawn and imported masks, for round_statistics (helper bulk).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0003_review_leases_and_progress"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="mask",
            index=models.Index(
                condition=models.Q(("source__in", ["drawn", "imported"])),
                fields=["id"],
                name="mask_manual",
            ),
        ),
    ]
