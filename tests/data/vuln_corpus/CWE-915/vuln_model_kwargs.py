from django.http import JsonResponse

from accounts.models import Account


def register(request):
    account = Account.objects.create(**request.POST.dict())
    return JsonResponse({"id": account.id})
