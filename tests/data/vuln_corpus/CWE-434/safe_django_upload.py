import uuid

from django.core.files.storage import default_storage
from django.http import HttpResponse, HttpResponseBadRequest

ALLOWED = {"application/pdf"}


def attach(request):
    doc = request.FILES["document"]
    if doc.content_type not in ALLOWED:
        return HttpResponseBadRequest("pdf only")
    default_storage.save(f"public/{uuid.uuid4().hex}.pdf", doc)
    return HttpResponse("stored")
