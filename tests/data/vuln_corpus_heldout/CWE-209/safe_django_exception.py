import logging

from django.http import HttpResponse, HttpResponseServerError


def checkout(request):
    try:
        request.user.cart.checkout()
    except Exception:
        logging.getLogger(__name__).exception("checkout failed")
        return HttpResponseServerError("checkout failed")
    return HttpResponse("done")
