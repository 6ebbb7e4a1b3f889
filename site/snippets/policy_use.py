from acme_policy import FaultBudget

import corestore

orders = corestore.open("orders", config="corestore.toml")
# enabled after the default plugins
assert orders.profile.plugins[-1] == "acme_fault_budget"

budget = orders.plugin(FaultBudget)  # the instance built for this store
assert budget.settings.max_faults == 1 and budget.settings.window_s == 300

report = orders.health()
print(report.components["acme_fault_budget"].summary)
# 0 fault(s) in the last 300 s (budget 1)
orders.close()
