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

$ImagingAction = 'configure_guest'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the guest, over PowerShell Direct: bring offline disks online, mount each labelled volume at
    # its folder under C:\volumes without a drive letter, and make each link a directory junction to that
    # folder. An empty placeholder folder at a link is replaced; a non-empty one is refused. Running it
    # again changes nothing. The same script is what a new OS disk's first boot runs (inject_first_boot), so
    # after a switch this step finds everything in place and only checks it.
    $Vm = 'NDXZOOM'
    $Volumes = @([ordered]@{'label' = 'Apps'; 'mount' = 'C:\volumes\Apps'; 'link' = 'C:\Instrument\Apps'}, [ordered]@{'label' = 'Settings'; 'mount' = 'C:\volumes\Settings'; 'link' = 'C:\Instrument\Settings'}, [ordered]@{'label' = 'Var'; 'mount' = 'C:\volumes\Var'; 'link' = 'C:\Instrument\Var'}, [ordered]@{'label' = 'Data'; 'mount' = 'C:\volumes\Data'; 'link' = 'C:\data'})
    $request = ConvertTo-Json -InputObject ([ordered]@{ volumes = @($Volumes) }) -Depth 4 -Compress
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $request -ScriptBlock {
        param([string] $RequestJson)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $request = ConvertFrom-Json -InputObject $RequestJson
        $changed = $false
        foreach ($disk in @(Get-Disk | Where-Object { $_.IsOffline })) {
            Set-Disk -Number $disk.Number -IsOffline $false
            $changed = $true
        }
        foreach ($disk in @(Get-Disk | Where-Object { $_.IsReadOnly })) {
            Set-Disk -Number $disk.Number -IsReadOnly $false
            $changed = $true
        }
        $report = New-Object System.Collections.Generic.List[object]
        foreach ($spec in @($request.volumes)) {
            $label = [string]$spec.label
            $mount = ([string]$spec.mount).TrimEnd('\')
            $link = ([string]$spec.link).TrimEnd('\')
            $did = New-Object System.Collections.Generic.List[string]
            $found = @(Get-Volume | Where-Object { $_.FileSystemLabel -eq $label })
            if ($found.Count -ne 1) { throw "expected one volume labelled '$label' in the guest, found $($found.Count)" }
            $partition = Get-Partition -Volume $found[0]
            if (-not (Test-Path -LiteralPath $mount -PathType Container)) {
                New-Item -ItemType Directory -Path $mount -Force | Out-Null
                $did.Add('created mount folder')
            }
            $paths = @($partition.AccessPaths | ForEach-Object { ([string]$_).TrimEnd('\') })
            if ($paths -notcontains $mount) {
                if (@(Get-ChildItem -LiteralPath $mount -Force).Count -gt 0) { throw "cannot mount '$label' at $mount: the folder is not empty" }
                Add-PartitionAccessPath -DiskNumber $partition.DiskNumber -PartitionNumber $partition.PartitionNumber -AccessPath ($mount + '\')
                $did.Add('mounted')
            }
            $letter = [string]$partition.DriveLetter
            if ($letter -match '^[A-Za-z]$') {
                Remove-PartitionAccessPath -DiskNumber $partition.DiskNumber -PartitionNumber $partition.PartitionNumber -AccessPath ($letter + ':\')
                $did.Add("removed drive letter $letter")
            }
            # A link leads to the mount folder, or to a folder inside the volume ('sub': a shared folder's place)
            $to = $mount
            if ($spec.PSObject.Properties.Name -contains 'sub' -and [string]$spec.sub) {
                $to = Join-Path -Path $mount -ChildPath ([string]$spec.sub)
                if (-not (Test-Path -LiteralPath $to -PathType Container)) {
                    New-Item -ItemType Directory -Path $to -Force | Out-Null
                    $did.Add('created the folder the link leads to')
                }
            }
            $item = Get-Item -LiteralPath $link -Force -ErrorAction SilentlyContinue
            $makeLink = $true
            if ($null -ne $item) {
                if (-not $item.PSIsContainer) { throw "cannot link $link to ${to}: a file is in the way" }
                if (($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                    $target = ([string]@($item.Target)[0]).TrimEnd('\')
                    if ($target -eq $to) { $makeLink = $false }
                    else {
                        [System.IO.Directory]::Delete($link, $false)
                        $did.Add("removed the link to $target")
                    }
                }
                elseif (@(Get-ChildItem -LiteralPath $link -Force).Count -eq 0) {
                    [System.IO.Directory]::Delete($link, $false)
                    $did.Add('removed empty placeholder folder')
                }
                else { throw "cannot link $link to ${to}: it is a folder with files in it; move them away first" }
            }
            if ($makeLink) {
                $parent = Split-Path -Path $link -Parent
                if (-not (Test-Path -LiteralPath $parent -PathType Container)) { New-Item -ItemType Directory -Path $parent -Force | Out-Null }
                New-Item -ItemType Junction -Path $link -Target $to | Out-Null
                $did.Add('linked')
            }
            if ($did.Count -gt 0) { $changed = $true }
            $report.Add([ordered]@{ label = $label; mount = $mount; link = $link; done = @($did.ToArray()) })
        }
        ConvertTo-Json -InputObject ([ordered]@{ changed = $changed; volumes = @($report.ToArray()) }) -Depth 5 -Compress
    }
    $guest = ConvertFrom-Json -InputObject ([string]$answer)
    $Result['changed'] = [bool]$guest.changed
    $Result['volumes'] = $guest.volumes
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
