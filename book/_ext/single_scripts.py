"""Each inline script once per page.

sphinx-thebe (loaded by Jupyter Book) adds its configuration script, which declares
``const THEBE_JS_URL``, once per read of the sources; a build that reads them twice writes it
twice, and the browser then reports "Identifier 'THEBE_JS_URL' has already been declared"
on every page. This drops repeated script entries before a page is written.
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        # An inline script has filename None or "" depending on how it was added.
        key = (getattr(script, "filename", script) or "", repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=100)  # before any handler that returns a template (which ends the event)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

