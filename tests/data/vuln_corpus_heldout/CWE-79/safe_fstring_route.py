import flask
from markupsafe import escape

app = flask.Flask(__name__)


@app.route("/search")
def search():
    q = flask.request.args.get("q", "")
    return f"<p>No results for {escape(q)}</p>"
