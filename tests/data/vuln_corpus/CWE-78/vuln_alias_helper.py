import subprocess as sp


def archive(folder):
    cmd = "tar czf /backups/out.tgz " + folder
    return sp.check_output(cmd, shell=True)
