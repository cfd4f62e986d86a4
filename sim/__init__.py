"""handoff simulation: robosuite/MuJoCo tasks, scripted experts, the simulated arm, evaluation."""
