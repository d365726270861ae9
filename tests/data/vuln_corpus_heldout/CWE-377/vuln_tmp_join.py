import os


def scratch_file(job_id):
    return open(os.path.join("/tmp", f"job-{job_id}.log"), "w")
