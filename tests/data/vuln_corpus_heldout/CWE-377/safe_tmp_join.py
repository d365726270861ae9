import tempfile


def scratch_file(job_id):
    return tempfile.NamedTemporaryFile("w", prefix=f"job-{job_id}-", suffix=".log", delete=False)
