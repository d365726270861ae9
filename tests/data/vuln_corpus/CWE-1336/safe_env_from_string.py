from jinja2 import Environment, FileSystemLoader, select_autoescape

env = Environment(loader=FileSystemLoader("templates"), autoescape=select_autoescape())


def render_email(template_name, context):
    return env.get_template(template_name).render(**context)
