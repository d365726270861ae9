import logging

from django.http import HttpResponse


def track(request):
    agent = request.headers.get("User-Agent", "")
    logging.info("visit from %s", agent)
    return HttpResponse(status=204)
