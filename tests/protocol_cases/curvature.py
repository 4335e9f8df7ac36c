"""The curvature group: basinscope hessian and basinscope sharpness (one measure, several)."""

from protocol_cases import MLP, _w

TINY = ["--subset", "64"]
MAP_GRID = ["--xrange", "-1:1:2", "--yrange", "-1:1:2"]

COMMANDS = {
    "hessian-map": (
        lambda w: ["hessian", *MLP, *_w(w[:1]), *TINY, "--map", *MAP_GRID],
        "landscape",
    ),
    "hessian": (
        lambda w: [
            "hessian",
            *MLP,
            *_w(w[:1]),
            *TINY,
            "--top",
            "2",
            "--bottom",
            "1",
            "--tol",
            "1e-4",
            "--trace",
            "hutchinson",
            "--trace-rtol",
            "0.2",
            "--density",
            "--density-steps",
            "20",
            "--per-layer",
        ],
        "hessian",
    ),
    "sharpness": (
        lambda w: [
            "sharpness",
            *MLP,
            *_w(w[:1]),
            *TINY,
            "--measure",
            "worst_case",
            "--steps",
            "2",
            "--restarts",
            "2",
        ],
        "sharpness",
    ),
    "sharpness-measures": (
        lambda w: [
            "sharpness",
            *MLP,
            *_w(w[:1]),
            *TINY,
            "--measure",
            "all",
            "--steps",
            "1",
            "--restarts",
            "1",
            "--samples",
            "2",
            "--directions",
            "2",
            "--m",
            "32",
            "--strategy",
            "loop",
        ],
        "sharpness_measures",
    ),
}
