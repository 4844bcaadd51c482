from django.urls import path
from shop import views

urlpatterns = [
    path("orders/<int:number>/receipt", views.send_receipt),
    path("orders/<int:number>/receipt-async", views.send_receipt_async),
    path("jobs/<str:result_id>", views.result),
    path("orders/<int:number>/place", views.place_order),
]
