from django.core.files.storage import default_storage
from django.http import HttpResponse


def attach(request):
    doc = request.FILES["document"]
    default_storage.save("public/" + doc.name, doc)
    return HttpResponse("stored")
