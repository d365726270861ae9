import os

UPLOADS = "/srv/uploads"


def read_attachment(user_supplied_name):
    full = os.path.join(UPLOADS, user_supplied_name)
    with open(full, "rb") as fh:
        return fh.read()
