from django.http import HttpResponse
from django.views.decorators.csrf import csrf_protect


@csrf_protect
def transfer(request):
    request.user.account.send(request.POST["to"], int(request.POST["amount"]))
    return HttpResponse("sent")
