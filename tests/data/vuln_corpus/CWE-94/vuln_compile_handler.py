from flask import Flask, request

app = Flask(__name__)


@app.post("/formula")
def formula():
    code = compile(request.form["expr"], "<formula>", "exec")
    scope = {}
    exec(code, scope)
    return str(scope.get("value"))
