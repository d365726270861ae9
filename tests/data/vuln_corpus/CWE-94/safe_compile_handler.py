import ast
import operator

from flask import Flask, request

app = Flask(__name__)
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _calc(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        return OPS[type(node.op)](_calc(node.left), _calc(node.right))
    raise ValueError("unsupported expression")


@app.post("/formula")
def formula():
    tree = ast.parse(request.form["expr"], mode="eval")
    return str(_calc(tree.body))
