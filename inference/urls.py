"""Infection-map pages and their API. Included at the site root by config/urls.py."""

from django.urls import path

from inference import apis, views

app_name = "inference"

urlpatterns = [
    path("maps/", views.map_list, name="maps"),
    path("images/<int:image_id>/map/", views.image_map, name="image-map"),
    path("demo/", views.demo, name="demo"),
    path("api/infer/", apis.InferApi.as_view(), name="api-infer"),
    path(
        "api/images/<int:image_id>/infection-map/",
        apis.ImageMapApi.as_view(),
        name="api-image-map",
    ),
    path(
        "api/images/<int:image_id>/starting-mask/",
        apis.StartingMaskApi.as_view(),
        name="api-starting-mask",
    ),
]
