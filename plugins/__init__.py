"""Built-in fragility plugins, installed as ``fragility_plugins``.

They use exactly the public hooks and API a third-party plugin would; the plugin manager registers the
modules listed in :data:`BUILTINS`.
"""

BUILTINS = [
    "fragility_plugins.timm_taps",
    "fragility_plugins.normed_taps",
    "fragility_plugins.topk",
    "fragility_plugins.magnitude",
    "fragility_plugins.diversity",
    "fragility_plugins.authors",
    "fragility_plugins.report_sections",
]
