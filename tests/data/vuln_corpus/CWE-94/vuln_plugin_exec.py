def run_plugin(source_text, context):
    namespace = {"ctx": context}
    exec(source_text, namespace)
    return namespace.get("result")
