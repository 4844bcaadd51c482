"""Views that start tasks and say how they are, as an application's would."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.tasks.exceptions import TaskResultDoesNotExist

from . import tasks


# --8<-- [start:views]
def send_receipt(request: HttpRequest, number: int) -> JsonResponse:
    backend = request.GET.get("backend", "default")
    result = tasks.send_receipt.using(backend=backend).enqueue(number, "ada@example.com")
    return JsonResponse({"id": result.id, "status": result.status}, status=202)


async def send_receipt_async(request: HttpRequest, number: int) -> JsonResponse:
    backend = request.GET.get("backend", "default")
    result = await tasks.send_receipt.using(backend=backend).aenqueue(number, "ada@example.com")
    return JsonResponse({"id": result.id, "status": result.status}, status=202)


def result(request: HttpRequest, result_id: str) -> JsonResponse:
    backend = request.GET.get("backend", "default")
    try:
        found = tasks.send_receipt.using(backend=backend).get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": "no such task"}, status=404)
    body = {"status": found.status, "attempts": found.attempts}
    if found.is_finished and found.status == "SUCCESSFUL":
        body["return_value"] = found.return_value
    return JsonResponse(body)


# --8<-- [end:views]


class PaymentDeclined(Exception):
    pass


# --8<-- [start:atomic]
def place_order(request: HttpRequest, number: int) -> JsonResponse:
    with transaction.atomic():
        # ... the order's rows, written with the ORM ...
        result = tasks.send_receipt.enqueue(number, "ada@example.com")
        if request.GET.get("card") == "declined":
            raise PaymentDeclined(number)  # rolls back the order and its task
    return JsonResponse({"id": result.id}, status=201)


# --8<-- [end:atomic]
