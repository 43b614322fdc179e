from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from annotation import views
from annotation.apis.schema import SchemaView
from annotation.replay import views as replay_views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("queue/", views.queue, name="queue"),
    path("draw/<int:image_id>/", views.draw, name="draw"),
    path("draw/<int:image_id>/saved/", views.draw_saved, name="draw-saved"),
    path("review/next/", views.review_next, name="review-next"),
    path("review/<uuid:item_uuid>/", views.review, name="review"),
    path("rounds/", views.rounds, name="rounds"),
    path("rounds/<int:number>/", views.round_detail, name="round-detail"),
    path("rounds/pretrain/", views.encoder_pretrain, name="encoder-pretrain"),
    path("exports/", views.exports, name="exports"),
    path("screening/", views.screening, name="screening"),
    path("pacs/", views.pacs, name="pacs"),
    path("images/<int:image_id>/history/", views.image_history, name="image-history"),
    path("imports/", views.imports, name="imports"),
    path("imports/<uuid:job_uuid>/", views.imports, name="import-detail"),
    path("replay/", replay_views.replays, name="replays"),
    path("replay/<uuid:run_uuid>/", replay_views.replay_detail, name="replay-detail"),
    path("replay/<uuid:run_uuid>/<str:name>", replay_views.replay_download, name="replay-file"),
    path("", include("inference.urls")),
    path("api/", include("annotation.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("django-admin/", admin.site.urls),
]

# An API path that matches no route answers JSON, as documented (annotation/apis/schema.py).
handler404 = "annotation.apis.common.not_found"
