from django.urls import path

from annotation import apis

app_name = "api"

urlpatterns = [
    path("images/", apis.ImageListApi.as_view(), name="image-list"),
    path("images/upload/", apis.ImageUploadApi.as_view(), name="image-upload"),
    path("images/<int:image_id>/", apis.ImageDetailApi.as_view(), name="image-detail"),
    path("images/<int:image_id>/display.png", apis.ImageDisplayApi.as_view(), name="image-display"),
    path("images/<int:image_id>/masks/", apis.ImageMasksApi.as_view(), name="image-masks"),
    path("masks/<int:mask_id>/file.png", apis.MaskFileApi.as_view(), name="mask-file"),
    path("rounds/", apis.RoundListApi.as_view(), name="round-list"),
    path("rounds/<int:number>/", apis.RoundDetailApi.as_view(), name="round-detail"),
    path("rounds/<int:number>/cancel/", apis.RoundCancelApi.as_view(), name="round-cancel"),
    path("review-items/next/", apis.ReviewNextApi.as_view(), name="item-next"),
    path("review-items/<uuid:item_uuid>/", apis.ReviewItemApi.as_view(), name="item-detail"),
    path(
        "review-items/<uuid:item_uuid>/image.png",
        apis.ReviewItemImageApi.as_view(),
        name="item-image",
    ),
    path(
        "review-items/<uuid:item_uuid>/candidates/<str:label>.png",
        apis.ReviewCandidateApi.as_view(),
        name="item-candidate",
    ),
    path(
        "review-items/<uuid:item_uuid>/decision/",
        apis.ReviewDecisionApi.as_view(),
        name="item-decision",
    ),
    path(
        "review-items/<uuid:item_uuid>/adjudicate/",
        apis.ReviewAdjudicateApi.as_view(),
        name="item-adjudicate",
    ),
    path("exports/", apis.ExportListApi.as_view(), name="export-list"),
    path("exports/<uuid:export_uuid>/", apis.ExportDetailApi.as_view(), name="export-detail"),
    path(
        "exports/<uuid:export_uuid>/download/",
        apis.ExportDownloadApi.as_view(),
        name="export-download",
    ),
]
