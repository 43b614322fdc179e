"""A synthetic demo dataset and demo accounts, so Stage I can start the moment the app runs."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

from annotation import imaging, services
from annotation.ingest import IngestReport, ingest_folder
from annotation.models import Image, ImageClass, Role
from annotation.phantoms import make_phantom, md_drawing

DEMO_ACCOUNTS = [
    ("md1", "md1-demo-pass", [Role.MD]),
    ("md2", "md2-demo-pass", [Role.MD]),
    # drew the seeded masks: an MD is never handed an item holding a mask they drew
    ("md3", "md3-demo-pass", [Role.MD]),
    ("admin", "admin-demo-pass", [Role.ADMIN]),
    ("data", "data-demo-pass", [Role.DATA]),
]


@dataclass(frozen=True)
class DemoCase:
    file: str
    covid: bool
    patient: str
    seed: int


def demo_cases(*, n_covid: int, n_control: int) -> list[DemoCase]:
    """COVID-19 and control phantoms; every third patient has two images (a follow-up)."""
    cases = []
    patient = 0
    for i in range(n_covid + n_control):
        covid = i < n_covid
        if i % 3 != 1:
            patient += 1
        cases.append(DemoCase(f"phantom_{i:03d}.png", covid, f"P{patient:03d}", 1000 + i))
    return cases


def demo_dataset_write(
    folder: Path, *, n_covid: int = 24, n_control: int = 6, size: int = 256, masks: bool = False
) -> list[DemoCase]:
    """Writes phantoms as plain PNGs plus a CSV of file, class, patient (idempotent); with
    `masks`, each COVID-19 phantom's infection mask too (masks/<file>, the CSV's mask column),
    e.g. for `manage.py replay`."""
    folder.mkdir(parents=True, exist_ok=True)
    if masks:
        (folder / "masks").mkdir(exist_ok=True)
    cases = demo_cases(n_covid=n_covid, n_control=n_control)
    with (folder / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "class", "patient", *(["mask"] if masks else [])])
        for case in cases:
            path = folder / case.file
            mask = folder / "masks" / case.file
            if not path.exists() or (masks and case.covid and not mask.exists()):
                phantom = make_phantom(case.seed, size=size, covid=case.covid)
                path.write_bytes(imaging.encode_png(phantom.image))
                if masks and case.covid:
                    mask.write_bytes(imaging.encode_mask(phantom.infection))
            row = [case.file, "COVID-19" if case.covid else "Normal", case.patient]
            if masks:
                row.append(f"masks/{case.file}" if case.covid else "")
            writer.writerow(row)
    return cases


def demo_md_masks(*, cases: list[DemoCase], author, count: int, size: int = 256) -> int:
    """Gives the first `count` COVID-19 phantoms an 'MD-drawn' mask, unless they have one."""
    drawn = 0
    for case in [c for c in cases if c.covid][:count]:
        image = Image.objects.filter(name=case.file, status=Image.Status.UNANNOTATED).first()
        if image is None:
            continue
        truth = make_phantom(case.seed, size=size, covid=True).infection
        services.mask_draw(
            image=image, author=author, data=imaging.encode_mask(md_drawing(truth, case.seed))
        )
        drawn += 1
    return drawn


def demo_accounts() -> list[tuple[str, str, list[Role]]]:
    User = get_user_model()
    for username, password, roles in DEMO_ACCOUNTS:
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_password(password)
            user.is_staff = Role.ADMIN in roles
            user.save()
        services.user_set_roles(user=user, roles=roles)
    return DEMO_ACCOUNTS


@transaction.atomic
def demo_seed(
    folder: Path, *, n_covid: int = 24, n_control: int = 6, md_masks: int = 12, size: int = 256
) -> IngestReport:
    demo_accounts()
    cases = demo_dataset_write(folder, n_covid=n_covid, n_control=n_control, size=size)
    report = ingest_folder(folder, source="maskloop-phantoms")
    # md3 drew the first masks, so md1 and md2 can review every Stage I item blind.
    md3 = get_user_model().objects.get(username="md3")
    demo_md_masks(cases=cases, author=md3, count=md_masks, size=size)
    return report


__all__ = ["demo_seed", "demo_accounts", "demo_dataset_write", "ImageClass"]
