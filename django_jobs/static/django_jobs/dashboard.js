// Refresh the dashboard's numbers in place: fetch the fragment, swap it in.
// No inline script anywhere, so a strict Content-Security-Policy keeps working.
"use strict";
(function () {
    const box = document.getElementById("jobs-dashboard");
    const toggle = document.getElementById("jobs-autorefresh");
    const stamp = document.getElementById("jobs-updated");
    if (!box) return;
    const every = 1000 * (parseInt(box.dataset.refreshSeconds, 10) || 10);

    async function refresh() {
        if (document.hidden || (toggle && !toggle.checked)) return;
        try {
            const response = await fetch(box.dataset.refreshUrl, {credentials: "same-origin"});
            if (!response.ok) throw new Error(response.status);
            box.innerHTML = await response.text();
            if (stamp) stamp.textContent = "Updated " + new Date().toLocaleTimeString();
        } catch (error) {
            if (stamp) stamp.textContent = "Refresh failed (" + error.message + "); retrying";
        }
    }
    setInterval(refresh, every);
    document.addEventListener("visibilitychange", refresh);
})();
