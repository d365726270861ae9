from django.http import HttpResponse


def remember(request):
    response = HttpResponse("ok")
    response.set_cookie("remember_me", "1", httponly=True, secure=False)
    return response
