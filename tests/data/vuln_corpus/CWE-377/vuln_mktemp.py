import tempfile


def spool(data):
    name = tempfile.mktemp(suffix=".csv")
    with open(name, "w") as fh:
        fh.write(data)
    return name
