from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def transfer(request):
    request.user.account.send(request.POST["to"], int(request.POST["amount"]))
    return HttpResponse("sent")
