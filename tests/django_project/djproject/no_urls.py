"""No views: the project as a worker of plain tasks loads it."""

urlpatterns: list[object] = []
