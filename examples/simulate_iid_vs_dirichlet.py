"""Compare FedAvg on IID and on skewed (Dirichlet 0.1) partitions, from Python instead of the CLI.

    python examples/simulate_iid_vs_dirichlet.py
"""

from fedproof.core.config import RunConfig
from fedproof.launch.simulation import simulate

for partition, alpha in (("iid", 0.5), ("dirichlet", 0.1)):
    config = RunConfig(clients=10, rounds=3, partition=partition, alpha=alpha, run_id=f"example-{partition}")
    result = simulate(config, observer=lambda row: print(f"  round {row.round}: accuracy {row.accuracy:.4f}"))
    print(f"{partition}: final accuracy {result.rounds[-1].accuracy:.4f} in {result.seconds:.0f} s ({result.run_dir})")
