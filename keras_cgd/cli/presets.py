"""`keras-cgd presets`: the registered presets."""


def add_parser(sub):
    """Adds the `presets` sub-command."""
    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(run=run)
    return p


def run(args):
    from keras_cgd.models.presets import get_preset
    from keras_cgd.models.presets import list_presets

    names = list_presets()
    width = max(len(n) for n in names)
    for name in names:
        p = get_preset(name)
        print(f"{name:<{width}}  {p['model']:<10}  {p.get('description', '')}")
    return 0
