"""The subcommands, one module each with ``set_argparser(parser)`` and ``main(args)``.

``kvmctl.cli`` registers them and imports only the one that runs. Flags two
commands share are declared once in :mod:`kvmctl.commands.flags`.
"""
