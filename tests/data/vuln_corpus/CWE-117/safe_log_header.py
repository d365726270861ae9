import logging

from django.http import HttpResponse


def track(request):
    agent = request.headers.get("User-Agent", "")
    logging.info("visit from %r", agent[:200].encode("unicode_escape"))
    return HttpResponse(status=204)
