"""``python -m producer`` is ``mammo``: handy where console scripts are not on PATH."""

from producer.cli import main

main()
