import os

UPLOADS = "/srv/uploads"


def read_attachment(user_supplied_name):
    full = os.path.realpath(os.path.join(UPLOADS, user_supplied_name))
    if os.path.commonpath([full, UPLOADS]) != UPLOADS:
        raise PermissionError(user_supplied_name)
    with open(full, "rb") as fh:
        return fh.read()
