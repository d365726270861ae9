from jinja2 import Environment, select_autoescape

env = Environment(autoescape=select_autoescape())


def render_email(user_template, context):
    return env.from_string(user_template).render(**context)
