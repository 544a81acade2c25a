"""python -m diet.tasks --write-configs DIR: the demo tasks as lm-eval task configs, for `lm_eval --include_path DIR`."""
from diet.tasks.demo import main

main()
