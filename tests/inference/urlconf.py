"""The site's URLs plus the infection-map pages, until config/urls.py includes them."""

from django.urls import include, path

from config.urls import urlpatterns as site_urlpatterns

urlpatterns = [
    *site_urlpatterns,
    *(
        []
        if any(getattr(p, "namespace", None) == "inference" for p in site_urlpatterns)
        else [path("", include("inference.urls"))]
    ),
]
