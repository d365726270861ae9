from starlette.responses import RedirectResponse


async def after_logout(request):
    return RedirectResponse(request.query_params["return_to"])
