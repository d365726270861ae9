import subprocess as sp


def archive(folder):
    return sp.check_output(["tar", "czf", "/backups/out.tgz", "--", folder])
