from starlette.responses import RedirectResponse

SAFE_TARGETS = {"/", "/goodbye"}


async def after_logout(request):
    target = request.query_params.get("return_to", "/")
    if target not in SAFE_TARGETS:
        target = "/"
    return RedirectResponse(target)
