from django.urls import path

from annotation.apis import exports, images, imports, notes, review, rounds

app_name = "api"

urlpatterns = [
    path("images/", images.ImageListApi.as_view(), name="image-list"),
    path("images/upload/", images.ImageUploadApi.as_view(), name="image-upload"),
    path("images/<int:image_id>/", images.ImageDetailApi.as_view(), name="image-detail"),
    path(
        "images/<int:image_id>/display.png", images.ImageDisplayApi.as_view(), name="image-display"
    ),
    path("images/<int:image_id>/masks/", images.ImageMasksApi.as_view(), name="image-masks"),
    path("masks/<int:mask_id>/file.png", images.MaskFileApi.as_view(), name="mask-file"),
    path("rounds/", rounds.RoundListApi.as_view(), name="round-list"),
    path("rounds/<int:number>/", rounds.RoundDetailApi.as_view(), name="round-detail"),
    path("rounds/<int:number>/cancel/", rounds.RoundCancelApi.as_view(), name="round-cancel"),
    path("rounds/<int:number>/team/", rounds.RoundTeamApi.as_view(), name="round-team"),
    path("review-items/next/", review.ReviewNextApi.as_view(), name="item-next"),
    path("review-items/<uuid:item_uuid>/", review.ReviewItemApi.as_view(), name="item-detail"),
    path(
        "review-items/<uuid:item_uuid>/image.png",
        review.ReviewItemImageApi.as_view(),
        name="item-image",
    ),
    path(
        "review-items/<uuid:item_uuid>/candidates/<str:label>.png",
        review.ReviewCandidateApi.as_view(),
        name="item-candidate",
    ),
    path(
        "review-items/<uuid:item_uuid>/decision/",
        review.ReviewDecisionApi.as_view(),
        name="item-decision",
    ),
    path(
        "review-items/<uuid:item_uuid>/lease/",
        review.ReviewLeaseApi.as_view(),
        name="item-lease",
    ),
    path("review-items/<uuid:item_uuid>/skip/", review.ReviewSkipApi.as_view(), name="item-skip"),
    path("review-items/<uuid:item_uuid>/undo/", review.ReviewUndoApi.as_view(), name="item-undo"),
    path(
        "review-items/<uuid:item_uuid>/adjudicate/",
        review.ReviewAdjudicateApi.as_view(),
        name="item-adjudicate",
    ),
    path("exports/", exports.ExportListApi.as_view(), name="export-list"),
    path("exports/<uuid:export_uuid>/", exports.ExportDetailApi.as_view(), name="export-detail"),
    path(
        "exports/<uuid:export_uuid>/download/",
        exports.ExportDownloadApi.as_view(),
        name="export-download",
    ),
    path("exports/preview/", exports.ExportPreviewApi.as_view(), name="export-preview"),
    path("images/<int:image_id>/notes/", notes.ImageNotesApi.as_view(), name="image-notes"),
    path(
        "review-items/<uuid:item_uuid>/notes/",
        notes.ReviewItemNotesApi.as_view(),
        name="item-notes",
    ),
    path("imports/", imports.ImportListApi.as_view(), name="import-list"),
    path("imports/<uuid:job_uuid>/", imports.ImportDetailApi.as_view(), name="import-detail"),
]
