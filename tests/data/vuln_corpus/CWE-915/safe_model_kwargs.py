from django.http import JsonResponse

from accounts.models import Account


def register(request):
    account = Account.objects.create(email=request.POST["email"], name=request.POST["name"])
    return JsonResponse({"id": account.id})
