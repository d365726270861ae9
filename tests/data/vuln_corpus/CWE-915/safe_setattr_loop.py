from flask import Flask, request

app = Flask(__name__)
EDITABLE = {"display_name", "bio"}


@app.patch("/profile")
def update_profile():
    user = current_user()
    for field, value in request.get_json().items():
        if field in EDITABLE:
            setattr(user, field, value)
    return "saved"


def current_user():
    return object()
