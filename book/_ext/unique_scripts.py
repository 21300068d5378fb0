"""Every script once per page.

sphinx-thebe and sphinx-togglebutton add their inline configuration scripts after the HTML builder is
made; with Sphinx 7.4 each of those reaches every page twice, and the second ``const THEBE_JS_URL = …``
is a SyntaxError in every reader's console (tests/test_browser.py fails on it). Listed in _config.yml's
``local_extensions``.
"""


def drop_repeated_scripts(app, pagename, templatename, context, doctree):
    seen, scripts = set(), []
    for script in context.get("script_files", []):
        # the builder's copy names no file as None, the registry's as ""
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"] = scripts


def setup(app):
    app.connect("html-page-context", drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
