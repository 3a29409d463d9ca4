"""What every job shares: the iteration driver, the checkpoint schema, ``--continue``, the output
rootname, the memory planner, validated parameters and logging."""
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: F401
from .driver import run_iterations  # noqa: F401
from .memory import MemoryPlan  # noqa: F401
from .output import OutputRoot  # noqa: F401
from .params import Params, param  # noqa: F401
