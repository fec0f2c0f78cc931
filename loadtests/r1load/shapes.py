"""Load shapes over the run: steady, step ramp, spike. Picked by --shape, sized by -u/-r/-t."""

from __future__ import annotations

from locust import LoadTestShape

from r1load.schedule import plan


class R1Shape(LoadTestShape):
    use_common_options = True  # -u is the peak users, -r the spawn rate, -t the whole run

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        users = options.num_users or 1
        rate = options.spawn_rate or users
        target = plan(options.shape, users, self.get_run_time(), options.run_time, max(1, options.steps))
        if target is None:
            return None  # Locust ends a shaped run when tick() says so, not at --run-time
        # A spike arrives at once, whatever -r says: that is what makes it a spike.
        return target, (float(target) if options.shape == "spike" else float(rate))
