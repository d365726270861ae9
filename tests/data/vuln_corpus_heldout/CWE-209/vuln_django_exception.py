from django.http import HttpResponseServerError


def checkout(request):
    try:
        request.user.cart.checkout()
    except Exception as exc:
        return HttpResponseServerError(f"checkout failed: {exc!r}")
    return HttpResponseServerError("unreachable")
