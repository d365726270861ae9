import importlib

ALLOWED_PLUGINS = {"csv_export": "plugins.csv_export", "pdf_export": "plugins.pdf_export"}


def run_plugin(plugin_name, context):
    module = importlib.import_module(ALLOWED_PLUGINS[plugin_name])
    return module.run(context)
