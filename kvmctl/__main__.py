try:
    from kvmctl.cli import main
except KeyboardInterrupt:  # Ctrl-C before kvmctl.cli installed its handlers: nothing to undo yet
    raise SystemExit(130) from None

raise SystemExit(main())
