param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'apply_settings'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # A settings-only change of the running guest, over PowerShell Direct (Hyper-V cannot swap the Settings
    # disk of a running VM, whose programs hold the volume open). Inside the guest: the new files are staged
    # under ProgramData and checked against their sha256 before anything is touched; the files they replace
    # (and the volume's manifest) are copied once to the Var volume with a listing; then each new file is
    # written beside its target and renamed over it, the files the new settings no longer have are removed,
    # the manifest is written, the whole volume is checked against it, and the change is entered in the
    # settings ledger on Var. The services that read the files are stopped and started by separate steps.
    # Running it again after success changes nothing; after a failure it resumes without backing up again.
    $Vm = 'NDXZOOM'
    $RequestJson = '{"backup_rel": "imaging/settings-backups/0a1b2c3d4e5f", "entry": {"files": ["labview/dae.ini"], "operation": "0a1b2c3d4e5f", "release": "2026C3.1", "services": ["InstrumentServer"], "when": "20261130T040000Z", "who": "jbloggs"}, "expect_before": "38c2715a19be6ecacd544a457527b54b7acf9651db5a08d84b8fb35795816fcc", "files": {".imaging/provenance.json": "eyJjb21taXQiOiAiNTEzNmRhMTQifQo=", "labview/dae.ini": "W0RBRV0NCkRldGVjdG9yIEJhbmtzID0gMTINCg=="}, "ledger_rel": "imaging/settings.json", "manifest": {"digest": "bb67eaf128c3661e0e3d3aeccf51852447374f052bed600f060068aaca91d234", "files": {".imaging/provenance.json": "583b211442c2663435d23695750c9877fc789e42c052a8059696ab2597c671f4", ".imaging/settings-version": "f0b5c2c2211c8d67ed15e75e656c7862d086e9245420892a7de62cd9ec582a06", "globals.txt": "d28c425f494e3455162ae45cb205fbc5b66f7affb19b38b60475a4cdfb671ef2", "labview/dae.ini": "e41bd861bd035e48ee48ad2d30347c454d5ef695a54933bfcab756dbdb939796"}}, "manifest_text": "{\n  \"digest\": \"bb67eaf128c3661e0e3d3aeccf51852447374f052bed600f060068aaca91d234\",\n  \"files\": {\n    \".imaging/provenance.json\": \"583b211442c2663435d23695750c9877fc789e42c052a8059696ab2597c671f4\",\n    \".imaging/settings-version\": \"f0b5c2c2211c8d67ed15e75e656c7862d086e9245420892a7de62cd9ec582a06\",\n    \"globals.txt\": \"d28c425f494e3455162ae45cb205fbc5b66f7affb19b38b60475a4cdfb671ef2\",\n    \"labview/dae.ini\": \"e41bd861bd035e48ee48ad2d30347c454d5ef695a54933bfcab756dbdb939796\"\n  }\n}\n", "operation": "0a1b2c3d4e5f", "remove": ["labview/instrument.ini"], "settings_link": "C:\\Instrument\\Settings", "var_link": "C:\\Instrument\\Var"}'
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $RequestJson -ScriptBlock {
        param([string] $RequestJson)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $r = ConvertFrom-Json -InputObject $RequestJson
        $utf8 = New-Object System.Text.UTF8Encoding -ArgumentList $false
        function Get-Sha([string] $Path) {
            if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) { return $null }
            return (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
        }
        function Write-BytesAtomic([string] $Path, [byte[]] $Bytes) {
            $folder = Split-Path -Path $Path -Parent
            if (-not (Test-Path -LiteralPath $folder -PathType Container)) { New-Item -ItemType Directory -Path $folder -Force | Out-Null }
            [System.IO.File]::WriteAllBytes($Path + '.imaging-partial', $Bytes)
            Move-Item -LiteralPath ($Path + '.imaging-partial') -Destination $Path -Force
        }
        function Join-Rel([string] $Root, [string] $Rel) { return (Join-Path -Path $Root -ChildPath $Rel.Replace('/', '\')) }
        $settings = (Get-Item -LiteralPath ([string]$r.settings_link)).FullName
        $var = (Get-Item -LiteralPath ([string]$r.var_link)).FullName
        $manifestPath = Join-Rel $settings '.imaging/manifest.json'
        $digest = $null
        if (Test-Path -LiteralPath $manifestPath -PathType Leaf) { $digest = (ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($manifestPath))).digest }
        $ledgerPath = Join-Rel $var ([string]$r.ledger_rel)
        $ledger = [pscustomobject]@{ applied = @() }
        if (Test-Path -LiteralPath $ledgerPath -PathType Leaf) { $ledger = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($ledgerPath)) }
        $recorded = @(@($ledger.applied) | Where-Object { [string]$_.operation -eq [string]$r.operation }).Count -gt 0
        if ($digest -eq [string]$r.manifest.digest -and $recorded) { return 'unchanged' }
        $backup = Join-Rel $var ([string]$r.backup_rel)
        $listing = Join-Path -Path $backup -ChildPath 'listing.json'
        if (-not (Test-Path -LiteralPath $listing -PathType Leaf) -and $digest -ne [string]$r.expect_before) {
            throw "the Settings volume is not what the plan was made from (its digest is $digest, expected $($r.expect_before)): someone changed it since; nothing was changed, plan again"
        }
        $staged = Join-Path -Path $env:ProgramData -ChildPath ('imaging\settings-staged\' + [string]$r.operation)
        $names = @($r.files.PSObject.Properties | ForEach-Object { $_.Name })
        foreach ($p in $r.files.PSObject.Properties) {
            $bytes = [System.Convert]::FromBase64String([string]$p.Value)
            Write-BytesAtomic (Join-Rel $staged $p.Name) $bytes
            if ((Get-Sha (Join-Rel $staged $p.Name)) -ne [string]$r.manifest.files.($p.Name)) {
                throw "$($p.Name) does not match its sha256 in the new manifest; nothing was put in place"
            }
        }
        if (-not (Test-Path -LiteralPath $listing -PathType Leaf)) {
            $saved = New-Object System.Collections.Generic.List[object]
            foreach ($rel in @(@($names) + @($r.remove) + @('.imaging/manifest.json') | Sort-Object -Unique)) {
                $src = Join-Rel $settings $rel
                $item = Get-Item -LiteralPath $src -Force -ErrorAction SilentlyContinue
                if ($null -ne $item -and ($item.PSIsContainer -or $item.Attributes -band [System.IO.FileAttributes]::ReparsePoint)) {
                    throw "Settings\$rel is not a regular file; refusing to replace it"
                }
                $sha = Get-Sha $src
                if ($null -ne $sha) { Write-BytesAtomic (Join-Rel (Join-Path -Path $backup -ChildPath 'files') $rel) ([System.IO.File]::ReadAllBytes($src)) }
                $saved.Add([ordered]@{ path = $rel; previous_sha256 = $sha })
            }
            $text = ConvertTo-Json -Depth 5 -InputObject ([ordered]@{ operation = [string]$r.operation; files = @($saved.ToArray()) })
            Write-BytesAtomic $listing $utf8.GetBytes($text)
        }
        foreach ($rel in $names) { Write-BytesAtomic (Join-Rel $settings $rel) ([System.IO.File]::ReadAllBytes((Join-Rel $staged $rel))) }
        foreach ($rel in @($r.remove)) {
            $target = Join-Rel $settings ([string]$rel)
            if (Test-Path -LiteralPath $target -PathType Leaf) { Remove-Item -LiteralPath $target -Force }
        }
        Write-BytesAtomic $manifestPath $utf8.GetBytes([string]$r.manifest_text)
        $wanted = @{}
        foreach ($p in $r.manifest.files.PSObject.Properties) { $wanted[$p.Name] = [string]$p.Value }
        $wrong = New-Object System.Collections.Generic.List[string]
        foreach ($f in Get-ChildItem -LiteralPath $settings -Recurse -File -Force) {
            $rel = $f.FullName.Substring($settings.TrimEnd('\').Length + 1).Replace('\', '/')
            if ($rel -eq '.imaging/manifest.json') { continue }
            if ($wanted[$rel] -ne (Get-Sha $f.FullName)) { $wrong.Add($rel) }
            $wanted.Remove($rel)
        }
        foreach ($rel in $wanted.Keys) { $wrong.Add($rel) }
        if ($wrong.Count -gt 0) { throw "after writing, the Settings volume does not match its new manifest: $(($wrong | Sort-Object) -join ', ')" }
        if (-not $recorded) {
            $entry = [ordered]@{}
            foreach ($p in $r.entry.PSObject.Properties) { $entry[$p.Name] = $p.Value }
            $entry['backup'] = [string]$r.backup_rel
            $ledger.applied = @(@($ledger.applied) + @([pscustomobject]$entry))
            Write-BytesAtomic $ledgerPath $utf8.GetBytes((ConvertTo-Json -Depth 8 -InputObject $ledger))
        }
        if (Test-Path -LiteralPath $staged) { Remove-Item -LiteralPath $staged -Recurse -Force }
        'applied'
    }
    $Result['changed'] = ([string]$answer -eq 'applied')
    $request = ConvertFrom-Json -InputObject $RequestJson
    $Result['files'] = @($request.files.PSObject.Properties).Count
    $Result['removed'] = @($request.remove).Count
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
