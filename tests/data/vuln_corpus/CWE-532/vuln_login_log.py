import logging

log = logging.getLogger("auth")


def authenticate(username, password, backend):
    log.info("login attempt user=%s password=%s", username, password)
    return backend.check(username, password)
